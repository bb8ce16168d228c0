"""The catalog's SQL, one module per family of tables; every query of the catalog is in this package.

- :mod:`.sql`: what the queries share (numbered parameters, aliases, LIKE patterns, cones);
- :mod:`.users`: users and their API tokens;
- :mod:`.programs`: programs, their members and the history of memberships;
- :mod:`.products`: products and their versions as cataloguing and releases write them, and the catalog order;
- :mod:`.search`: products as one viewer may read them (the access rule's condition in every query).

Store classes take a connection inside the caller's transaction and never commit.
"""
