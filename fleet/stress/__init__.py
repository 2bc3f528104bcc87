"""`fleet stress`: reconnect storms and network faults, with a delivery report a CI can gate on."""
