"""firmware_bridge: sensor readings from a microcontroller over serial into the edgelstm runtime.

Protocols (``protocol``), the bridge (one reader thread for every port -> bounded queue -> worker stepping the
runtime -> sinks), sinks (stdout, CSV, MQTT, Prometheus), a device simulator, and in
``firmware/`` the MCU-side C encoder of the frame protocol.
"""
