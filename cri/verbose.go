package cri

import "encoding/json"

func mustJSON(v any) []byte {
	data, err := json.Marshal(v)
	if err != nil {
		return []byte("null")
	}
	return data
}

// jsonRaw embeds JSON as is in a verbose info document.
type jsonRaw []byte

func (j jsonRaw) MarshalJSON() ([]byte, error) {
	if !json.Valid(j) {
		return json.Marshal(string(j))
	}
	return j, nil
}

func jsonString(v any) string { return string(mustJSON(v)) }
