"""The agent's HTTP side below the routes: the web configuration file (``schema``), the TLS
context it asks for (``tls_context``), basic auth and limits in front of every route (``auth``),
the bounded listener (``listener``), pages rendered one at a time (``rendering``) and one log
line per condition (``throttled_log``)."""
