"""Device mesh, logical-axis rules and sharded initialisation."""
