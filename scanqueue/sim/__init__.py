"""The Kubernetes API emulator: tests and the demo only; production modules never import it."""
