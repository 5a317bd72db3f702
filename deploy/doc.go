// Package deploy holds no code: its tests validate the deployment artefacts
// (deploy/Dockerfile, deploy/kubernetes, deploy/prometheus and the repository's
// docker-compose.yml) offline, with the parsers of the tools that consume them.
// It is a module of its own so that those parsers stay out of pamworker's
// go.mod. Run it with `cd deploy && go test ./...`.
package deploy
