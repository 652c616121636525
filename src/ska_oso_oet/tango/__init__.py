"""The Tango adapter: OETDevice (one per subarray), its SKA conventions and its server."""
