"""Who may call a service, kept apart from how the caller proved it.

- principal: who is calling (an id and a role), and the Authenticator protocol that proves it.
- interceptor: the server side: authenticate every call, then authorize its method against the
  service's rules (method → role). Health and reflection stay open.
- service_tokens: one proof, the signed Suara-Service token, checked against a credential store.
- credential: the service credential a caller keeps (its key file) and the token it signs.
- client: the client interceptor that signs every call with a service credential.
- store: the protected service's credential table: its DDL, issue, revoke, lookup.
- admin: the admin credential file clients (the CLI, the load generator) present as a bearer token.

Replacing how callers prove who they are (certificates, request-bound tokens) replaces an
authenticator module; the interceptor and each service's rules stay as they are.
"""
