"""ssedeploy's roles: one module per thing a host runs, each a pyinfra @deploy."""
