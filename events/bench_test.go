package events_test

import (
	"testing"

	"github.com/pamworker/pamworker/events"
)

func BenchmarkDecode(b *testing.B) {
	data := []byte(`{"event_id":"01J9Z3K8W5B6TQ4X7M2N8P0R1S","credential_id":94,"correlation_id":"INC-4711","requested_by":"soar","reason":"offboarding"}`)
	newID := func() string { return "generated" }
	b.ReportAllocs()
	for b.Loop() {
		if _, err := events.Decode(events.CredentialDisable, data, "01J9Z3K8W5B6TQ4X7M2N8P0R1S", 0, newID); err != nil {
			b.Fatal(err)
		}
	}
}
