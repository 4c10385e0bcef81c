"""Small shared package for authsvc, api, the broker stand-in and the tooling.

It holds what more than one of them needs (settings, database access, migrations, topic and envelope
helpers, the EMQX REST client, logging) so that nothing is written twice. The services never import
each other; they only share this package.
"""
