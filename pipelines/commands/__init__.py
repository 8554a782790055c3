"""The command line: one module per ``attnunet`` command, its flags mapped onto the pipelines' configs."""
