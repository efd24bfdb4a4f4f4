"""Recipes as members see them: matching one to a server's registry, its text, reading image files."""
