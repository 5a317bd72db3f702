package events_test

import (
	"fmt"

	"github.com/pamworker/pamworker/events"
)

func ExampleDecode() {
	newID := func() string { return "01JGENERATED" }

	// A credential id may be a JSON number or a numeric string; the Nats-Msg-Id header is the
	// event id when the payload has none.
	ev, err := events.Decode(events.CredentialDisable,
		[]byte(`{"credential_id": "94", "correlation_id": "INC-4711"}`), "msg-1", 0, newID)
	fmt.Println(ev.ID, ev.Target, ev.Object(), ev.CorrelationID, err)

	// A rejection names the problem and still carries the id, so it can be answered.
	ev, err = events.Decode(events.CredentialDisable,
		[]byte(`{"username": "jane@corp", "hostname": "db01"}`), "", 0, newID)
	fmt.Println(ev.ID)
	fmt.Println(err)
	// Output:
	// msg-1 default credential 94 INC-4711 <nil>
	// 01JGENERATED
	// invalid_event: username "jane@corp" contains @, which Segura's username@hostname path cannot express; use credential_id
}
