package emulator

import (
	"math"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Services named in counters and faults.
const (
	ServiceARM  = "arm"
	ServiceAAD  = "aad"
	ServiceIMDS = "imds"
)

// Operation names used in counters and faults. ARM operations are named after the SDK methods.
const (
	OpVMGet        = "VirtualMachines.Get"
	OpVMList       = "VirtualMachines.List"
	OpVMUpdate     = "VirtualMachines.Update"
	OpVMSSGet      = "VirtualMachineScaleSets.Get"
	OpVMSSList     = "VirtualMachineScaleSets.List"
	OpVMSSUpdate   = "VirtualMachineScaleSets.Update"
	OpVMSSVMGet    = "VirtualMachineScaleSetVMs.Get"
	OpVMSSVMList   = "VirtualMachineScaleSetVMs.List"
	OpOperationGet = "Operations.Get" // LRO status polls
	OpIdentityGet  = "UserAssignedIdentities.Get"
	OpIdentityPut  = "UserAssignedIdentities.CreateOrUpdate"
	OpIdentityDel  = "UserAssignedIdentities.Delete"
	OpIdentityList = "UserAssignedIdentities.List"
	OpFICGet       = "FederatedIdentityCredentials.Get"
	OpFICPut       = "FederatedIdentityCredentials.CreateOrUpdate"
	OpFICDel       = "FederatedIdentityCredentials.Delete"
	OpFICList      = "FederatedIdentityCredentials.List"
	OpAADToken     = "Token"
	OpAADOpenID    = "OpenIDConfiguration"
	OpAADDiscovery = "InstanceDiscovery"
	OpAADKeys      = "Keys"
	OpIMDSToken    = "Token"
	OpIMDSInstance = "Instance"
	OpIMDSNotFound = "NotFound"
)

// CounterKey identifies one counter. In queries (Count) empty fields and Status 0 match anything.
type CounterKey struct {
	Service   string `json:"service"`
	Operation string `json:"operation"`
	// Kind is "read", "write" or "delete" for ARM calls.
	Kind string `json:"kind,omitempty"`
	// Resource is the lower-case ARM resource ID (ARM), tenant (AAD) or host key (IMDS).
	Resource string `json:"resource,omitempty"`
	// Identity is the client ID of the identity or application the call was for, when known.
	Identity string `json:"identity,omitempty"`
	// Subject is a federated assertion's sub (AAD token exchanges).
	Subject string `json:"subject,omitempty"`
	// Code is the AADSTS code of an AAD error answer (0: success, or not AAD).
	Code   int `json:"code,omitempty"`
	Status int `json:"status"`
}

// CounterEntry is one counter value.
type CounterEntry struct {
	CounterKey
	Count int64 `json:"count"`
}

type counters struct {
	mu sync.RWMutex
	m  map[CounterKey]*atomic.Int64
}

func (c *counters) init() { c.m = map[CounterKey]*atomic.Int64{} }

func (c *counters) inc(k CounterKey) {
	k.Resource = strings.ToLower(k.Resource)
	k.Identity = strings.ToLower(k.Identity)
	c.mu.RLock()
	v := c.m[k]
	c.mu.RUnlock()
	if v == nil {
		c.mu.Lock()
		if v = c.m[k]; v == nil {
			v = new(atomic.Int64)
			c.m[k] = v
		}
		c.mu.Unlock()
	}
	v.Add(1)
}

func (k CounterKey) matches(q CounterKey) bool {
	return (q.Service == "" || q.Service == k.Service) &&
		(q.Operation == "" || strings.EqualFold(q.Operation, k.Operation)) &&
		(q.Kind == "" || q.Kind == k.Kind) &&
		(q.Resource == "" || strings.EqualFold(q.Resource, k.Resource)) &&
		(q.Identity == "" || strings.EqualFold(q.Identity, k.Identity)) &&
		(q.Subject == "" || q.Subject == k.Subject) &&
		(q.Code == 0 || q.Code == k.Code) &&
		(q.Status == 0 || q.Status == k.Status)
}

// Counters returns every counter, sorted. Counts are exact: every answered call is counted once.
func (e *Emulator) Counters() []CounterEntry {
	e.counters.mu.RLock()
	out := make([]CounterEntry, 0, len(e.counters.m))
	for k, v := range e.counters.m {
		out = append(out, CounterEntry{k, v.Load()})
	}
	e.counters.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Service != b.Service {
			return a.Service < b.Service
		}
		if a.Operation != b.Operation {
			return a.Operation < b.Operation
		}
		if a.Resource != b.Resource {
			return a.Resource < b.Resource
		}
		if a.Identity != b.Identity {
			return a.Identity < b.Identity
		}
		return a.Status < b.Status
	})
	return out
}

// Count sums the counters matching q (empty fields and Status 0 are wildcards).
func (e *Emulator) Count(q CounterKey) int64 {
	var n int64
	e.counters.mu.RLock()
	for k, v := range e.counters.m {
		if k.matches(q) {
			n += v.Load()
		}
	}
	e.counters.mu.RUnlock()
	return n
}

// ResetCounters sets every counter to zero.
func (e *Emulator) ResetCounters() {
	e.counters.mu.Lock()
	e.counters.m = map[CounterKey]*atomic.Int64{}
	e.counters.mu.Unlock()
}

// HostKey returns the canonical key of a VM or VMSS instance (any form IMDSHandler accepts):
// the lower-case resource ID that an IMDS Fault's Resource and IMDS counters use.
func (e *Emulator) HostKey(key string) (string, error) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	h, err := e.hostLocked(key)
	if err != nil {
		return "", err
	}
	return strings.ToLower(h.Key), nil
}

// Fault makes the next Count matching calls fail or slow down.
type Fault struct {
	Service   string `json:"service"`             // ServiceARM, ServiceAAD or ServiceIMDS
	Operation string `json:"operation,omitempty"` // e.g. OpVMSSUpdate; empty matches every operation
	// Resource restricts the fault to one ARM resource ID, tenant or IMDS host key (case-insensitive).
	Resource string `json:"resource,omitempty"`
	// Identity restricts an IMDS fault to token requests naming this identity by client ID,
	// object ID or resource ID (case-insensitive): e.g. "Identity not found" for one identity
	// while the host's others are served.
	Identity string `json:"identity,omitempty"`
	// Count is how many calls are affected; 0 means every call until ClearFaults.
	Count int `json:"count,omitempty"`
	// Status is the HTTP status to answer; 0 only adds Latency.
	Status     int      `json:"status,omitempty"`
	Code       string   `json:"code,omitempty"`
	Message    string   `json:"message,omitempty"`
	RetryAfter Duration `json:"retryAfter,omitempty"`
	Latency    Duration `json:"latency,omitempty"`
	// Async, for ARM writes, accepts the request and makes its long-running operation end Failed
	// with Code and Message instead of failing the request itself.
	Async bool `json:"async,omitempty"`
}

type faultSet struct {
	active atomic.Int32 // fast path: no lock when zero
	hits   atomic.Int64 // calls a fault matched (FaultHits)
	mu     sync.Mutex
	list   []*faultEntry
}

type faultEntry struct {
	Fault
	left int
}

// AddFault registers a fault.
func (e *Emulator) AddFault(f Fault) {
	e.faults.mu.Lock()
	e.faults.list = append(e.faults.list, &faultEntry{Fault: f, left: f.Count})
	e.faults.active.Store(int32(len(e.faults.list)))
	e.faults.mu.Unlock()
}

// FaultHits counts the calls that a fault has matched since the emulator started (a call that
// a Latency fault delays is counted when the delay begins).
func (e *Emulator) FaultHits() int64 { return e.faults.hits.Load() }

// ClearFaults removes every fault.
func (e *Emulator) ClearFaults() {
	e.faults.mu.Lock()
	e.faults.list = nil
	e.faults.active.Store(0)
	e.faults.mu.Unlock()
}

// take returns the first fault matching the call and consumes one use of it; idents are the
// identities the call names (IMDS only), which a fault with Identity must be among.
func (fs *faultSet) take(service, op, resource string, idents ...string) *Fault {
	if fs.active.Load() == 0 {
		return nil
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	for i, f := range fs.list {
		if f.Service != service || (f.Operation != "" && !strings.EqualFold(f.Operation, op)) ||
			(f.Resource != "" && !strings.EqualFold(f.Resource, resource)) || !namesIdentity(f.Identity, idents) {
			continue
		}
		out := f.Fault
		fs.hits.Add(1)
		if f.Count > 0 {
			f.left--
			if f.left <= 0 {
				fs.list = append(fs.list[:i:i], fs.list[i+1:]...)
				fs.active.Store(int32(len(fs.list)))
			}
		}
		return &out
	}
	return nil
}

func namesIdentity(want string, idents []string) bool {
	if want == "" {
		return true
	}
	for _, id := range idents {
		if id != "" && strings.EqualFold(id, want) {
			return true
		}
	}
	return false
}

// throttler keeps ARM token buckets per subscription, principal and kind.
type throttler struct {
	enabled atomic.Bool
	mu      sync.Mutex
	cfg     Throttling
	buckets map[string]*bucketState
}

type bucketState struct {
	tokens float64
	last   time.Time
}

func (t *throttler) init(c Throttling) {
	d := DefaultThrottling()
	if c.Reads.Capacity == 0 {
		c.Reads = d.Reads
	}
	if c.Writes.Capacity == 0 {
		c.Writes = d.Writes
	}
	if c.Deletes.Capacity == 0 {
		c.Deletes = d.Deletes
	}
	t.cfg = c
	t.enabled.Store(c.Enabled)
	t.buckets = map[string]*bucketState{}
}

// take consumes one token; it returns the remaining count and, when empty, how long to wait.
func (t *throttler) take(sub, principal, kind string, now time.Time) (remaining int, wait time.Duration, ok bool) {
	b := t.cfg.Reads
	switch kind {
	case "write":
		b = t.cfg.Writes
	case "delete":
		b = t.cfg.Deletes
	}
	key := strings.ToLower(sub + "|" + principal + "|" + kind)
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.buckets[key]
	if s == nil {
		s = &bucketState{tokens: b.Capacity, last: now}
		t.buckets[key] = s
	}
	s.tokens = math.Min(b.Capacity, s.tokens+now.Sub(s.last).Seconds()*b.RefillPerSecond)
	s.last = now
	if !t.enabled.Load() {
		return int(s.tokens), 0, true
	}
	if s.tokens < 1 {
		if b.RefillPerSecond <= 0 {
			return 0, time.Hour, false
		}
		return 0, time.Duration((1 - s.tokens) / b.RefillPerSecond * float64(time.Second)), false
	}
	s.tokens--
	return int(s.tokens), 0, true
}

// SetThrottling turns ARM throttling on or off; when turned on the buckets start full.
func (e *Emulator) SetThrottling(on bool) {
	e.throttle.mu.Lock()
	e.throttle.buckets = map[string]*bucketState{}
	e.throttle.enabled.Store(on)
	e.throttle.mu.Unlock()
}

// SetThrottlingBuckets replaces the bucket sizes (and empties the buckets' history).
func (e *Emulator) SetThrottlingBuckets(t Throttling) {
	e.throttle.mu.Lock()
	defer e.throttle.mu.Unlock()
	en := t.Enabled
	e.throttle.init(t)
	e.throttle.enabled.Store(en)
}
