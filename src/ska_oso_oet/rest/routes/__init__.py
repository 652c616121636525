"""One router per resource, gathered by :func:`ska_oso_oet.rest.app.create_app`."""
