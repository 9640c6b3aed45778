"""Which version answers a request (contract section 3) and which model its path names;
pure functions over the table."""
