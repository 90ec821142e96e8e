"""Adapters that put the session stores of other frameworks on kvsessions.

Each module is an optional extra and imports its framework only when it is itself imported;
``import kvsessions`` never imports a framework. Each takes a store URL, a ``SessionStorage``
or a ``KVStore``, so an application changes one line:

* ``kvsessions.integrations.openai_agents``: an OpenAI Agents SDK ``Session``
  (``pip install 'kvsessions[openai-agents]'``);
* ``kvsessions.integrations.langchain``: LangChain's ``BaseChatMessageHistory``
  (``pip install 'kvsessions[langchain]'``);
* ``kvsessions.integrations.adk``: Google ADK's ``BaseSessionService``
  (``pip install 'kvsessions[adk]'``);
* ``kvsessions.integrations.langgraph``: LangGraph's ``BaseCheckpointSaver``
  (``pip install 'kvsessions[langgraph]'``).

The chat histories are ordinary message documents of one session, so ``kvsessions show``,
``export``, the cache and migration work on them; LangGraph's checkpoints are versioned
documents of their own kinds (``checkpoint``, ``checkpoint_writes``) under their own key prefix.
"""
