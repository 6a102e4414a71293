"""HTTP transport: parse, validate, authenticate, stream, map errors. No domain logic here."""
