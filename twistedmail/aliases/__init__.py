"""The alias expander and the directory database it asks (the seed's Database)."""
