"""Generation: KV-cache bundles (graphc build --kv-cache) and the decoding loop that runs them
(graphc generate). The bundle format is described in docs/generation.md."""
