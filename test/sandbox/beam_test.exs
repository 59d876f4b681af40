defmodule Sandbox.BeamTest do
  use ExUnit.Case, async: true
  doctest Sandbox.Beam
end
