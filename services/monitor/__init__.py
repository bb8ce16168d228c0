"""The monitor: notices new files at the observatory, evaluates them (DEP) and ships them to the archive."""
