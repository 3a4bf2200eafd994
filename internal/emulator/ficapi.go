package emulator

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

var ficOps = map[string]string{http.MethodGet: OpFICGet, http.MethodPut: OpFICPut, http.MethodDelete: OpFICDel}

// ficBody is the ARM body of a federated identity credential.
type ficBody struct {
	Properties *struct {
		Issuer      string   `json:"issuer"`
		Subject     string   `json:"subject"`
		Audiences   []string `json:"audiences"`
		Description string   `json:"description,omitempty"`
	} `json:"properties"`
}

func renderFIC(identityID string, f *fic) map[string]any {
	ts := func(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }
	return map[string]any{"id": identityID + "/federatedIdentityCredentials/" + f.Name, "name": f.Name, "type": ficType,
		"properties": map[string]any{"issuer": f.Issuer, "subject": f.Subject, "audiences": []string{f.Audience}},
		"systemData": map[string]any{"createdAt": ts(f.Created), "lastModifiedAt": ts(f.Modified)}}
}

// serveFIC serves PUT/GET/DELETE of one federated identity credential and the list.
func (e *Emulator) serveFIC(w http.ResponseWriter, r *http.Request, rt *armRoute) {
	var body ficBody
	if r.Method == http.MethodPut {
		raw, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err == nil {
			err = json.Unmarshal(raw, &body)
		}
		if err != nil {
			writeARMError(w, &ARMError{400, "InvalidRequestContent", "The request content was invalid and could not be deserialized: " + err.Error(), nil})
			return
		}
	}
	l := strings.ToLower(IdentityID(rt.sub, rt.rg, rt.name))
	now := time.Now()
	e.mu.Lock()
	idn := e.identities[l]
	if idn == nil {
		e.mu.Unlock()
		writeARMError(w, &ARMError{404, "ParentResourceNotFound", fmt.Sprintf("The parent user-assigned identity doesn't exist: '%s' was not found in resource group '%s'. Create the identity first.", rt.name, rt.rg), nil})
		return
	}
	s := &idn.FICs
	switch {
	case rt.target == "fics":
		out := make([]any, 0, len(s.list))
		for _, f := range s.list {
			out = append(out, renderFIC(idn.ID, f))
		}
		e.mu.Unlock()
		writeJSON(w, 200, map[string]any{"value": out})
		return
	case r.Method == http.MethodGet:
		_, f := s.find(rt.child)
		var out map[string]any
		if f != nil {
			out = renderFIC(idn.ID, f)
		}
		e.mu.Unlock()
		if f == nil {
			writeARMError(w, notFound(ficType, idn.Name+"/"+rt.child, rt.rg))
			return
		}
		writeJSON(w, 200, out)
		return
	}
	// Writes: Azure refuses overlapping writes under one identity; FICWrite makes them overlap.
	if now.Before(s.busyUntil) {
		e.mu.Unlock()
		writeARMError(w, &ARMError{409, FICConflictCode, fmt.Sprintf("Too many Federated Identity Credentials are written concurrently for the managed identity '%s'. Concurrent Federated Identity Credentials writes under the same managed identity are not supported: write them one after another.", strings.ToLower(idn.ID)), nil})
		return
	}
	status := 200
	var out map[string]any
	if r.Method == http.MethodDelete {
		if !s.remove(rt.child) {
			status = 204
		}
	} else {
		in := FederatedCredentialConfig{Name: rt.child}
		if p := body.Properties; p != nil {
			in.Issuer, in.Subject, in.Audiences, in.Description = p.Issuer, p.Subject, p.Audiences, p.Description
		}
		created, ae := s.put(in, now)
		if ae != nil {
			e.mu.Unlock()
			writeARMError(w, ae)
			return
		}
		if created {
			status = 201
		}
		_, f := s.find(rt.child)
		out = renderFIC(idn.ID, f)
	}
	d := e.cfg.Timing.FICWrite.Duration
	s.busyUntil = now.Add(d)
	e.mu.Unlock()
	if d > 0 {
		time.Sleep(d)
	}
	if out == nil {
		w.WriteHeader(status)
		return
	}
	writeJSON(w, status, out)
}

// ficAdmin serves the admin calls for federated credentials (see docs/emulator.md).
func (e *Emulator) ficAdmin(mux *http.ServeMux, fail func(http.ResponseWriter, int, error), status func(error) int) {
	mux.HandleFunc("POST /federatedCredentials", func(w http.ResponseWriter, r *http.Request) {
		var in struct {
			Owner string `json:"owner"`
			FederatedCredentialConfig
		}
		dec := json.NewDecoder(r.Body)
		dec.DisallowUnknownFields()
		if err := dec.Decode(&in); err != nil {
			fail(w, 400, fmt.Errorf("decode request body (fields: owner, name, issuer, subject, audiences, description): %w", err))
			return
		}
		if err := e.AddFederatedCredential(in.Owner, in.FederatedCredentialConfig); err != nil {
			fail(w, status(err), err)
			return
		}
		w.WriteHeader(204)
	})
	mux.HandleFunc("DELETE /federatedCredentials", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if err := e.RemoveFederatedCredential(q.Get("owner"), q.Get("name")); err != nil {
			fail(w, status(err), err)
			return
		}
		w.WriteHeader(204)
	})
	mux.HandleFunc("GET /federatedCredentials", func(w http.ResponseWriter, r *http.Request) {
		l, err := e.FederatedCredentials(r.URL.Query().Get("owner"))
		if err != nil {
			fail(w, status(err), err)
			return
		}
		writeJSON(w, 200, map[string]any{"federatedCredentials": l})
	})
}
