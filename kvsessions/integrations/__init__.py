"""Adapters that let applications written on other frameworks keep their sessions in kvsessions.

One module per framework; each is imported only when used, and only it imports its framework.
"""
