"""The gateway's work between the route and the response: headers, tokens, upstream calls, streams."""
