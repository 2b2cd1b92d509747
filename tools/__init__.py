"""Developer tools: the mesh launcher, code generation, migrations, `make key`, the README settings table."""
