"""Test fixtures that ship with the package: tiny random models of every supported architecture
(:mod:`.tiny`), built in memory in well under a second."""
