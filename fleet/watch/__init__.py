"""`fleet watch`: a Textual TUI that shows a live fleet on any broker."""
