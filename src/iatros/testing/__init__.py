"""Test helpers shipped with the package, so users can test their own setups too."""
