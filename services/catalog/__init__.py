"""The catalog: programs and access, products and versions, dataset events, search and downloads."""
