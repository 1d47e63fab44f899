"""(Being written; see DESIGN.md for what this module holds.)"""
