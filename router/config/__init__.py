"""The routing table: its frozen model (the schema), YAML with line marks, validation, the
table in force and its reloads, and which users a change moves. Imports only `http`."""
