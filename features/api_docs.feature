Feature: The API documents itself
  Swagger UI and the OpenAPI document describe every route.

  Scenario: The OpenAPI document lists every route
    When the OpenAPI document is read
    Then it lists these routes:
      | method | path                    |
      | post   | /api/orders             |
      | get    | /api/order/{id}         |
      | get    | /api/order/{id}/events  |
      | get    | /api/orders/{user_id}   |
      | get    | /api/methods            |
      | get    | /health                 |
      | get    | /ready                  |
      | get    | /metrics                |

  Scenario: Swagger UI is served, and the reference's address leads to it
    Then "/swagger-ui/" answers 200
    And "/swagger/index.html" redirects to "/swagger-ui/"
