package v1_test

import (
	"os"
	"testing"

	"github.com/podidentity/podidentity/internal/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { os.Exit(testenv.Main(m, &env)) }
