package caddymodule

import (
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestAuthorizationDetailTypesWalksTheDocument(t *testing.T) {
	for _, tc := range []struct {
		name  string
		raw   string
		types []string
		ok    bool
	}{
		{"one", `[{"type":"payment_initiation","amount":"1"}]`, []string{"payment_initiation"}, true},
		{"two_with_nesting", ` [ {"locations":["a","b"],"x":{"type":"inner"},"type" : "a"} , {"type":"b","n":[1,{"k":[]}],"t":true,"f":null,"z":-1.5e3} ] `, []string{"a", "b"}, true},
		{"escaped_key_and_value", `[{"t\u0079pe":"p\u0061y"}]`, []string{"pay"}, true},
		{"braces_in_strings", `[{"s":"}]{[\"","type":"x"}]`, []string{"x"}, true},
		{"empty_array", `[]`, nil, true},
		{"no_type", `[{"kind":"x"}]`, []string{""}, true},
		{"inner_type_only", `[{"x":{"type":"inner"}}]`, []string{""}, true},
		{"type_not_a_string", `[{"type":1}]`, []string{""}, true},
		{"duplicate_type", `[{"type":"a","type":"b"}]`, []string{""}, true},
		{"type_case_differs", `[{"TYPE":"a"}]`, []string{""}, true},
		{"not_an_array", `{"type":"a"}`, nil, false},
		{"array_of_strings", `["a"]`, nil, false},
		{"object_then_number", `[{"type":"a"},2]`, nil, false},
		{"invalid_json", `[{"type":"a"}`, nil, false},
		{"trailing_garbage", `[{"type":"a"}] x`, nil, false},
		{"empty", ``, nil, false},
		{"not_utf8", "[{\"type\":\"\xfd\"}]", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			types, ok := authorizationDetailTypes(tc.raw)
			if ok != tc.ok || !slices.Equal(types, tc.types) {
				t.Errorf("authorizationDetailTypes(%s) = %q, %v; want %q, %v", tc.raw, types, ok, tc.types, tc.ok)
			}
		})
	}
}

// referenceDetailTypes is the decoding reading of authorization_details
// (encoding/json into maps) that the walk must agree with.
func referenceDetailTypes(raw string) ([]string, bool) {
	var details []map[string]json.RawMessage
	if err := json.Unmarshal([]byte(raw), &details); err != nil {
		return nil, false
	}
	types := make([]string, len(details))
	for i, d := range details {
		if d == nil {
			return nil, false // a null element
		}
		_ = json.Unmarshal(d["type"], &types[i])
	}
	return types, true
}

// FuzzAuthorizationDetailTypes checks the walk against encoding/json: the
// same verdict and types, except that an object with two type members
// has none for the walk (the decoder keeps the last).
func FuzzAuthorizationDetailTypes(f *testing.F) {
	for _, s := range []string{
		`[{"type":"a"}]`, `[{"type":"a","x":{"type":"b"}},{"type":"c"}]`, `[{"t\u0079pe":"x"}]`,
		`[{"type":"a","type":"b"}]`, `[]`, `[null]`, `[{"type":null}]`, `{"type":"a"}`, `[{"s":"\"}]"}]`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		got, ok := authorizationDetailTypes(raw)
		if !utf8.ValidString(raw) {
			if ok {
				t.Fatalf("%q: not UTF-8, accepted", raw)
			}
			return
		}
		want, wok := referenceDetailTypes(raw)
		if ok != wok {
			t.Fatalf("%q: walk ok=%v, encoding/json ok=%v", raw, ok, wok)
		}
		if len(got) != len(want) {
			t.Fatalf("%q: walk %q, encoding/json %q", raw, got, want)
		}
		for i := range got {
			if got[i] != want[i] && !(got[i] == "" && strings.Count(raw, "type") > 1) {
				t.Fatalf("%q: element %d: walk %q, encoding/json %q", raw, i, got[i], want[i])
			}
		}
	})
}

// BenchmarkAuthorizationDetails validates a 9.6 KB authorization_details
// of 25 payment objects (the bench's par-push-large carries 8 KiB): the
// walk against the decoding reading it replaced.
func BenchmarkAuthorizationDetails(b *testing.B) {
	var ds []map[string]any
	for i := range 25 {
		ds = append(ds, map[string]any{"type": "payment_initiation", "locations": []string{"https://example.com/payments"},
			"instructedAmount": map[string]string{"currency": "EUR", "amount": strconv.Itoa(100 + i)}, "creditorName": "Merchant GmbH",
			"creditorAccount": map[string]string{"iban": "DE02100100109307118603"}, "remittanceInformationUnstructured": "Ref Number Merchant 00001000",
			"actions": []string{"initiate", "status", "cancel"}, "datatypes": []string{"payment", "status"}, "identifier": "pmt-00000000"})
	}
	raw, _ := json.Marshal(ds)
	for _, v := range []struct {
		name string
		f    func(string) ([]string, bool)
	}{{"walk", authorizationDetailTypes}, {"decode", referenceDetailTypes}} {
		b.Run(v.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if types, ok := v.f(string(raw)); !ok || len(types) != 25 {
					b.Fatal(types, ok)
				}
			}
		})
	}
}
