"""Explanation methods: name grammar, engine, and the method families.

:func:`list_methods` lists every method-name family with its parameters and defaults;
:func:`format_methods` renders that list as text.
"""

from .catalog import MethodFamily, format_methods, list_methods

__all__ = ["MethodFamily", "list_methods", "format_methods"]
