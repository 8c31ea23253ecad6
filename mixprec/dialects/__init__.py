"""One module per framework for what its frontend and backend share: its registration
record (``FRAMEWORK``, found through the ``mixprec.frameworks`` entry points), its cast op
and its naming conventions. Importing a dialect module never imports the framework."""
