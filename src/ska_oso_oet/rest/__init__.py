"""REST gateway: the documented OET HTTP API served in front of OETDevice(s).

The gateway never runs scripts. Every request maps to a command or attribute of the Tango
device (see ``client.py``), and the event stream is fed by the device's ``lastEvent`` change
events. Build the app with :func:`ska_oso_oet.rest.app.create_app`.
"""
