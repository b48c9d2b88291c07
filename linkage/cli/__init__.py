"""The `linkage` command line. Subcommands import node or gateway code lazily,
so the shared package itself depends on neither."""
