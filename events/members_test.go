package events

import (
	"bytes"
	"encoding/json"
	"fmt"
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

// TestManyKeysStayLinear: a hostile event with thousands of keys is refused, and keys given
// twice are found however many keys come before them, in any case (the set that takes over
// past a handful of keys folds case as strings.EqualFold does).
func TestManyKeysStayLinear(t *testing.T) {
	t.Parallel()
	for _, twin := range []string{"a7", "A7", "ａ7", ""} {
		var b strings.Builder
		b.WriteString("{")
		for i := range 5000 {
			fmt.Fprintf(&b, `"a%d":1,`, i)
		}
		if twin != "" {
			fmt.Fprintf(&b, `%q:2,`, twin)
		}
		b.WriteString(`"z":0}`)
		_, rej := members([]byte(b.String()))
		switch {
		case twin == "" && rej != nil:
			t.Errorf("5000 distinct keys: %v", rej)
		case twin != "" && twin != "ａ7" && (rej == nil || !strings.Contains(rej.Message, "more than once")):
			t.Errorf("twin %q after 5000 keys: %v", twin, rej)
		case twin == "ａ7" && rej != nil:
			t.Errorf("a full-width key is another key: %v", rej)
		}
	}
	if foldCase("K") != foldCase("k") || foldCase("ſ") != foldCase("S") || foldCase("a") == foldCase("b") {
		t.Error("foldCase does not fold as EqualFold does")
	}
}
