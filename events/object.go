package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
)

// Object is a JSON object's members in their order, values untouched: for tools that edit an
// event (a replay's new id, the requested_by an ingress caller stands for) without touching
// the rest of it.
type Object []jsonMember

type jsonMember struct {
	key string
	raw json.RawMessage
}

// ParseObject reads one JSON object, refusing anything after it.
func ParseObject(b []byte) (Object, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, errors.New("payload is not a JSON object")
	}
	var obj Object
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("payload: %w", err)
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, fmt.Errorf("payload: %w", err)
		}
		obj = append(obj, jsonMember{tok.(string), raw})
	}
	if _, err := dec.Token(); err != nil {
		return nil, fmt.Errorf("payload: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("payload has data after its JSON object")
	}
	return obj, nil
}

// Get returns the raw value of key.
func (o Object) Get(key string) (json.RawMessage, bool) {
	for _, m := range o {
		if m.key == key {
			return m.raw, true
		}
	}
	return nil, false
}

// Set replaces the value of key where it stands, or appends it.
func (o Object) Set(key string, raw json.RawMessage) Object {
	for i := range o {
		if o[i].key == key {
			o[i].raw = raw
			return o
		}
	}
	return append(o, jsonMember{key, raw})
}

// Del removes key.
func (o Object) Del(key string) Object {
	return slices.DeleteFunc(o, func(m jsonMember) bool { return m.key == key })
}

// Marshal writes the object back, members in order.
func (o Object) Marshal() []byte {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, m := range o {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(m.key)
		b.Write(k)
		b.WriteByte(':')
		b.Write(m.raw)
	}
	b.WriteByte('}')
	return b.Bytes()
}
