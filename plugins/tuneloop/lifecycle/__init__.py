"""The checkpoint lifecycle: which rounds' artifacts stay, which are archived or deleted, and
how an archived round comes back when a rollback needs it (`retention`, `inventory`,
`planning`, `apply`, `restore`)."""
