package events

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// FuzzMembers checks the hand-written object scanner against encoding/json: for every valid
// JSON object, members finds the same keys with the same values, or refuses a key given twice.
func FuzzMembers(f *testing.F) {
	for _, s := range []string{
		`{}`, `{"a":1}`, `{"a":"x","b":[1,{"c":"}"}],"d":null}`, ` { "k\"ey" : "v\\\"" , "n" : -1.5e3 } `,
		`{"a":{"b":{"c":[[[]]]}},"e":true,"f":false}`, `{"\u0061":1}`, `{"a":1,"A":2}`, `{"a":"\u00e9"}`,
		`[1]`, `"s"`, `null`, `1`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if !json.Valid(data) {
			return
		}
		ms, rej := members(data)
		var want map[string]json.RawMessage
		err := json.Unmarshal(data, &want)
		if err != nil || want == nil { // not an object
			if rej == nil {
				t.Fatalf("members accepted a non-object %q", data)
			}
			return
		}
		if rej != nil {
			if !strings.Contains(rej.Message, "more than once") {
				t.Fatalf("members refused %q: %v", data, rej)
			}
			return
		}
		if len(ms) != len(want) {
			t.Fatalf("%q: %d members, encoding/json found %d keys", data, len(ms), len(want))
		}
		for _, m := range ms {
			w, ok := want[m.key]
			if !ok {
				t.Fatalf("%q: key %q not found by encoding/json", data, m.key)
			}
			if !bytes.Equal(bytes.TrimSpace(m.raw), bytes.TrimSpace(w)) {
				t.Fatalf("%q: key %q value %q, encoding/json %q", data, m.key, m.raw, w)
			}
		}
	})
}
