package main

import (
	"net/http"

	"github.com/podidentity/podidentity/internal/chaos"
	"github.com/podidentity/podidentity/internal/emulator"
)

// windowEvidence names the emulator counters that show what an emulator window met: the calls
// of the kind it targets (ARM writes, Azure AD token requests) or the answers it made (429, 500,
// IMDS 400 on the node). The injector also notes the emulator's fault hits in the window, which
// count every call a fault matched (windows never overlap, so all of them are this window's).
func (inj *injector) windowEvidence(f chaos.Fault) []emulator.CounterKey {
	writes := []emulator.CounterKey{{Service: emulator.ServiceARM, Operation: emulator.OpVMSSUpdate}, {Service: emulator.ServiceARM, Operation: emulator.OpVMUpdate}}
	switch f.Kind {
	case chaos.ARMThrottle:
		return []emulator.CounterKey{{Service: emulator.ServiceARM, Status: http.StatusTooManyRequests}}
	case chaos.ARM5xx:
		return []emulator.CounterKey{{Service: emulator.ServiceARM, Status: http.StatusInternalServerError}}
	case chaos.ARMSlow, chaos.ARMLROFailed:
		return writes
	case chaos.AAD5xx, chaos.AADSlow:
		return []emulator.CounterKey{{Service: emulator.ServiceAAD, Operation: emulator.OpAADToken}}
	case chaos.IMDSNotFound:
		n := inj.sb.Nodes[f.Target%len(inj.sb.Nodes)]
		host, err := inj.sb.Emulator.HostKey(n.HostKey)
		if err != nil {
			return nil
		}
		return []emulator.CounterKey{{Service: emulator.ServiceIMDS, Operation: emulator.OpIMDSToken, Resource: host, Status: http.StatusBadRequest}}
	}
	return nil
}

func (inj *injector) countAll(keys []emulator.CounterKey) int64 {
	var n int64
	for _, k := range keys {
		n += inj.sb.Emulator.Count(k)
	}
	return n
}
