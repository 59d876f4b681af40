defmodule Sandbox.Guard do
  @moduledoc """
  The template of each sandbox's guard.

  Relocation repoints a sandbox's calls to guarded functions (see
  `Sandbox.SecurityController.Operations`) to a copy of this module
  relocated into the sandbox, `Elixir.Sandbox@<id>.Sandbox.Guard`, in which
  the atom `:__sandbox_shim_id__` is the sandbox's id: a call of
  `:ets.insert/2` becomes a call of the copy's `:"ets.insert"/2`, which
  checks its arguments (`Sandbox.Guard.Runtime`) and then calls
  `:ets.insert/2`. Dynamic calls are rewritten to the copy's `:"$apply"`,
  `:"$call_fun"` and `:"$send"` (with up to #{32} arguments). This module
  itself is never called directly.
  """

  alias Sandbox.Guard.Runtime

  @max_dynamic 32

  @doc """
  The most arguments a dynamic call (`mod.fun(...)` with a computed module
  or function, `fun.(...)`) of a sandbox's code may take: a module with a
  wider one is refused at load (`{:error, {:dynamic_call_too_wide,
  sites}}`, see `Sandbox.ChangeSet.reload/3`).
  """
  @spec max_dynamic_arity() :: non_neg_integer
  def max_dynamic_arity, do: @max_dynamic

  defp id, do: :__sandbox_shim_id__

  for {m, f, a} <- Runtime.guarded_mfas() do
    args = Macro.generate_arguments(a, __MODULE__)

    @doc false
    def unquote(Runtime.guard_name({m, f, a}))(unquote_splicing(args)),
      do: Runtime.guarded(id(), {unquote(m), unquote(f), unquote(a)}, [unquote_splicing(args)])
  end

  for n <- 0..@max_dynamic do
    args = Macro.generate_arguments(n, __MODULE__)

    @doc false
    def unquote(:"$apply")(unquote_splicing(args), module, function),
      do: Runtime.apply(id(), module, function, [unquote_splicing(args)])

    @doc false
    def unquote(:"$call_fun")(unquote_splicing(args), fun),
      do: Runtime.call_fun(id(), fun, [unquote_splicing(args)])
  end

  @doc false
  def unquote(:"$send")(dest, message), do: Runtime.send(id(), dest, message)
end
