"""ssedeploy: deploy and verify Server-Sent Events behind nginx."""
