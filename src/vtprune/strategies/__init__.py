"""Built-in strategy plugins, each registered through the ``vtprune`` entry-point group
exactly as a third-party package registers its own."""
