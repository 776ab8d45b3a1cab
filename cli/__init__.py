"""The ferry command line."""
