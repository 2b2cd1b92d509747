"""The shared runtime of every voicemesh service: config, logs, errors, server bootstrap, channels."""
