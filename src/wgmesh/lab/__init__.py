"""The network-namespace NAT lab for end-to-end tests, benchmarks and the demo (docs/lab.md)."""
