defmodule Sandbox.RuntimeCode do
  @moduledoc """
  Modules a sandbox creates at run time, in the sandbox's own namespace.

  A sandbox's code (or library code running on its behalf) that calls
  `Module.create/3`, defines a module with `defmodule` inside a function
  body (a run-time call of `:elixir_module.compile/4`, as
  `NimbleCSV.define/2` does), `Code.compile_string/1,2`,
  `Code.compile_quoted/1,2` or `:code.load_binary/3` would, unsandboxed,
  load a module into the host under its plain name: host-global, callable
  from any other sandbox, alive after destroy. These calls are guarded
  (operation class `:code_load`, see
  `Sandbox.SecurityController.Operations`) in every profile, and the guard
  hands them here instead of making them:

    1. the code is compiled in a compile worker (`Sandbox.IsolatedCompiler.compile_forms/4`),
       never in the host VM — a module body is arbitrary code — with the
       sandbox's own modules (their current BEAMs under their original
       names) reachable, so that `use`, `import`, `require` and macros of
       the sandbox's libraries work. The sandbox's relocated names in the
       arguments (the caller's `__ENV__`, the body's variables, quoted
       code) are mapped back to their original names first;
       `:code.load_binary/3` already has its BEAM and compiles nothing;
    2. the modules produced are added to the sandbox through its ordinary
       change path (`Sandbox.hot_reload_sandbox/3`): relocated, guarded and
       classified under the sandbox's profile like any other of its modules
       (a forbidden call inside refuses the new module), versioned (a module
       created again is its next version), listed among the sandbox's
       modules, and purged on destroy. Existing modules are not relocated
       again for it (see "Calls to modules created at run time" below).

  Where the profile lacks `:code_load` (`:high`) the call raises
  `Sandbox.SecurityError` and nothing is compiled or loaded; a module that
  merely holds such a call still loads.

  ## Results

  Results are shaped like the host's, with the module under its relocated
  name — the name its own `__MODULE__` has, and the one to call it by:

    * `Module.create/3` and a run-time `defmodule`: `{:module, relocated,
      beam, result}`. `beam` is the BEAM as compiled, under the original
      name (what `:code.load_binary/3` inside the same sandbox takes back);
      `result`, the value of the module body, is the worker's value when it
      is plain data and `nil` when it holds a pid, port, reference or fun
      (those of the worker's VM mean nothing here);
    * `Code.compile_string/1,2` and `Code.compile_quoted/1,2`:
      `[{relocated, beam}]`;
    * `:code.load_binary/3`: `{:module, relocated}`, or `{:error, reason}`
      (`:badarg` for a binary that is no BEAM of the module named, or the
      change's refusal).

  A compile error raises `CompileError` (its description the worker's
  diagnostics); a new module the profile refuses raises
  `Sandbox.SecurityError` (`reason: {:refused, violations}`); any other
  failure raises `RuntimeError` naming the reason.

  ## Calls to modules created at run time

  A dynamic call (`mod.fun()`, `apply/3`) reaches the sandbox's copy
  through the guard's mapping of names (`Sandbox.Guard.Runtime.map_module/2`,
  which does not cache "not the sandbox's" for a name whose copy may still
  be created). A static call `MyParser.parse(x)` compiled into the sandbox
  before `MyParser` existed is relocated at load into the sandbox's
  namespace when `MyParser` is an Elixir module that is neither the
  sandbox's own nor the host's (not loaded and not on the host's code
  path): a *phantom*, which only the sandbox itself can bring into being
  (see `Sandbox.ChangeSet`). Its calls count as the sandbox's own under
  every profile. Erlang-named modules are not treated so (an Erlang atom
  is too often plain data): reach those with dynamic calls. A phantom named
  like a host module that the host loads later keeps pointing into the
  sandbox for code loaded before that.

  ## Limits

    * The sandbox must be running (or reloading): a module created while
      the sandbox starts (from its application's `start/2` or a root's
      `init/1`, which its instance waits for) raises `RuntimeError` with
      reason `:sandbox_starting` instead of waiting forever.
    * `Code.eval_string/1,2,3`, `Code.eval_quoted/1,2,3` and `Code.eval_file/1,2`
      stay as they were (class `:all`: refused under `:high` and `:medium`,
      unguarded under `:low`): evaluation runs in the caller's process and
      binds the caller's variables, so it cannot be moved to a worker, and a
      module it defines is the evaluator's business.
    * A body's compile-time side effects (messages, processes, files)
      happen in the worker, and go with it.
    * A module nested in the body of `Module.create/3` or of a run-time
      `defmodule` is not collected under Elixir 1.14 (its compile tracer
      emits no `:on_module` there): only the module created is added.
      `Code.compile_string/2` and `Code.compile_quoted/2` add every module
      they define, nested ones included.
  """

  alias Sandbox.{Instance, Manager, OriginalNames}
  alias Sandbox.Guard.Runtime

  @doc """
  Performs the guarded code-loading call `{m, f, a}` with `args` for
  sandbox `id` (the atom its guard knows it by). Called by
  `Sandbox.Guard.Runtime.guarded/3`.
  """
  @spec perform(atom, mfa, [term]) :: term
  def perform(id, mfa, args), do: with_atom_budget(id, mfa, fn -> run(id, mfa, args) end)

  defp run(id, {Module, :create, 3}, [module, quoted, opts]) when is_atom(module) do
    sid = Atom.to_string(id)
    original = original(sid, module)
    form = {:module_create, original, OriginalNames.map(sid, quoted), map_opts(sid, opts)}
    module_result(sid, form, original)
  end

  defp run(id, {:elixir_module, :compile, 4}, [module, block, vars, env])
       when is_atom(module) do
    sid = Atom.to_string(id)
    original = original(sid, module)

    form =
      {:defmodule, original, OriginalNames.map(sid, block), OriginalNames.map(sid, vars),
       OriginalNames.map(sid, env)}

    module_result(sid, form, original)
  end

  defp run(id, {Code, fun, _a}, [code | file])
       when fun in [:compile_string, :compile_quoted] and length(file) <= 1 do
    sid = Atom.to_string(id)
    file = with [] <- file, do: "nofile", else: ([f] -> f)

    unless is_binary(file),
      do: raise(ArgumentError, "expected a file name, got: #{inspect(file)}")

    code =
      if fun == :compile_string,
        do: IO.chardata_to_string(code),
        else: OriginalNames.map(sid, code)

    {modules, _results} = create!(sid, [{fun, code, file}])
    for {m, beam} <- modules, do: {relocated(sid, m), beam}
  end

  defp run(id, {:code, :load_binary, 3}, [module, _file, binary])
       when is_atom(module) and is_binary(binary) do
    sid = Atom.to_string(id)
    original = original(sid, module)

    with {:parsed, {:ok, %{module: ^original}}} <- {:parsed, parse(id, binary)},
         :ok <- add(sid, [binary]) do
      {:module, relocated(sid, original)}
    else
      # Not a BEAM, or not one of the module named (as :code.load_binary/3).
      {:parsed, _} -> {:error, :badarg}
      {:error, {:invalid_beam, _, _}} -> {:error, :badarg}
      {:error, reason} -> {:error, reason}
    end
  end

  defp run(_id, {m, f, a}, args) do
    raise ArgumentError,
          "invalid arguments for #{inspect(m)}.#{f}/#{a}: #{inspect(args, limit: 5)}"
  end

  ## Steps

  defp module_result(sid, form, original) do
    {modules, [{_defined, value}]} = create!(sid, [form])

    beam =
      case List.keyfind(modules, original, 0) do
        {_, beam} -> beam
        nil -> raise RuntimeError, "#{inspect(original)} was not defined"
      end

    result =
      case value do
        {:value, term} -> term
        _ -> nil
      end

    {:module, relocated(sid, original), beam, result}
  end

  # Compiles `forms` in a worker against the sandbox's modules, then adds
  # what they define to the sandbox: `{[{module, beam}], form_results}`.
  defp create!(sid, forms) do
    pid = instance!(sid)

    {:ok, %{beams: beams, root: root, opts: opts}} =
      call!(sid, fn -> Instance.versions(pid, :runtime_code) end)

    id = String.to_existing_atom(sid)
    opts = Keyword.merge(opts, confine: confine(opts[:confine]), max_new_atoms: atoms_left!(id))

    case Sandbox.IsolatedCompiler.compile_forms(root, forms, beams, opts) do
      {:ok, %{modules: []}} ->
        raise RuntimeError, "sandbox #{sid}: the code defined no module"

      {:ok, %{modules: modules, form_results: results} = compiled} ->
        spend!(id, Map.get(compiled, :created_atoms, 0))
        for {_m, beam} <- modules, do: parse!(id, sid, beam)

        case add(sid, Enum.map(modules, &elem(&1, 1))) do
          :ok -> {modules, results}
          {:error, reason} -> fail!(sid, reason)
        end

      {:error, {:compilation_failed, diagnostics}} ->
        raise CompileError, description: describe(diagnostics)

      {:error, reason} ->
        fail!(sid, reason)
    end
  end

  # The modules added to the sandbox as one change (a reload that relinks
  # nothing: names the sandbox already holds keep their relocation).
  defp add(sid, beams) do
    pid = instance!(sid)

    case call!(sid, fn ->
           Instance.hot_reload(pid, beams, trigger: :runtime_code, relink: false)
         end) do
      {:ok, _hot_reloaded_or_unchanged} -> :ok
      {:error, _} = error -> error
    end
  end

  # A module body is the sandbox's code, run in the worker at run time with
  # whatever data the sandbox has then: the worker is confined wherever the
  # profile confines compiles at all (`:preferred` becomes `:required`).
  defp confine(:preferred), do: :required
  defp confine(other), do: other

  ## Atoms

  # The atoms run-time code makes in this VM are spent from the sandbox's
  # atom budget (`Sandbox.Guard.Runtime`, `:max_atoms`), counted exactly
  # before they are made: a BEAM's (its atom table and its literals, which
  # the loader makes) and those of the worker's result. Each step that
  # makes atoms from what the sandbox gave is capped at what is left.
  defp with_atom_budget(id, mfa, fun) do
    Process.put({__MODULE__, :mfa}, mfa)
    atoms_left!(id)
    fun.()
  end

  defp atoms_left!(id) do
    case Runtime.atoms_left(id) do
      n when n > 0 -> n
      _ -> spend!(id, 1)
    end
  end

  defp spend!(id, n), do: Runtime.spend_atoms(id, Process.get({__MODULE__, :mfa}), n)

  # Parses a BEAM given by the sandbox, after spending the atoms it would
  # make (none is made to find out).
  defp parse(id, binary) do
    left = atoms_left!(id)

    case new_atoms(binary, left) do
      {:ok, n} ->
        spend!(id, n)
        Sandbox.Beam.parse(binary, max_new_atoms: max(n, 1))

      {:error, :too_many_atoms} ->
        spend!(id, left + 1)

      {:error, _} = error ->
        error
    end
  end

  # How many atoms loading `binary` would make: the names in its atom
  # table and in its literals that are not atoms yet, each once;
  # `{:error, :too_many_atoms}` past `max`.
  defp new_atoms(binary, max) do
    with {:ok, table} <- atom_table(binary),
         {:ok, literals} <- Sandbox.Beam.new_literal_atoms(binary, max) do
      n = length(Enum.uniq(Enum.reject(table, &existing_atom?/1) ++ literals))
      if n > max, do: {:error, :too_many_atoms}, else: {:ok, n}
    end
  end

  # The names of a BEAM's atom table (AtU8, one length byte per name as
  # OTP 25 writes it), without making atoms.
  defp atom_table(binary) do
    with {:ok, {_, [{~c"AtU8", <<count::32, names::binary>>}]}} <-
           :beam_lib.chunks(binary, [~c"AtU8"]),
         {:ok, list} <- names(names, count, []) do
      {:ok, list}
    else
      _ -> {:error, :bad_atom_table}
    end
  end

  defp names(_rest, 0, acc), do: {:ok, acc}

  defp names(<<len, name::binary-size(len), rest::binary>>, n, acc),
    do: names(rest, n - 1, [name | acc])

  defp names(_rest, _n, _acc), do: :error

  defp existing_atom?(name) do
    _ = :erlang.binary_to_existing_atom(name, :utf8)
    true
  rescue
    ArgumentError -> false
  end

  defp parse!(id, sid, beam) do
    case parse(id, beam) do
      {:ok, _} -> :ok
      {:error, reason} -> fail!(sid, {:invalid_beam, reason})
    end
  end

  defp instance!(sid) do
    case Manager.lookup(sid) do
      {:ok, pid, _info} when pid == self() ->
        fail!(sid, :sandbox_starting)

      {:ok, pid, %{status: status}} when status in [:running, :reloading] ->
        pid

      {:ok, _pid, %{status: status}} when status in [:compiling, :starting] ->
        fail!(sid, :sandbox_starting)

      {:ok, pid, _info} ->
        pid

      {:error, :not_found} ->
        fail!(sid, :not_found)
    end
  end

  defp call!(sid, fun) do
    fun.()
  catch
    :exit, _ -> fail!(sid, :not_found)
  end

  defp fail!(sid, {:security_violation, [first | _] = violations}) do
    raise Sandbox.SecurityError,
      sandbox_id: sid,
      target: first.target,
      class: first.class,
      reason: {:refused, violations}
  end

  defp fail!(sid, reason) do
    raise RuntimeError,
          "sandbox #{sid}: could not create the module at run time: #{inspect(reason)}"
  end

  defp describe(diagnostics) do
    Enum.map_join(List.wrap(diagnostics), "\n", fn
      %{message: message} = d -> "#{d[:file]}:#{d[:line]}: #{message}"
      other -> inspect(other)
    end)
  end

  ## Names

  defp original(sid, module), do: OriginalNames.map(sid, module)

  defp relocated(sid, module) do
    {:ok, name} = Sandbox.Beam.relocated_name(sid, module)
    name
  end

  # Module.create/3's options: a Macro.Env or a keyword list (:file, :line).
  defp map_opts(sid, opts), do: OriginalNames.map(sid, opts)
end
