"""Explanation methods: name grammar, engine, and the method families."""
